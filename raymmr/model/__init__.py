"""The model: encoders, RecNet and the full model (modules and shapes), and its export format
(``export``: safetensors weights, config.json, tokenizer and answers beside them, the model
card), which ``RaymmrModel.from_pretrained`` reads. The objective lives in ``raymmr.objective``,
inference in ``raymmr.serve``. Knows nothing of Ray, DeepSpeed, shards or search."""
