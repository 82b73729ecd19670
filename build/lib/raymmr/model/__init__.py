"""The model: encoders, RecNet, the full model, masking and losses (pure functions), the per-step
tasks, FLOP counting, exports and inference. Knows nothing of Ray, DeepSpeed, shards or search."""
