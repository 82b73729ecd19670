"""The training objective: what one step computes from (model, batch, config). ``task`` decides
which forward passes a step runs and which loss each feeds (pre-training: CMDPI + Robust-MMR;
fine-tuning: CMDPI Eq. 13), ``losses`` holds each term as a pure function, ``masking`` the mask
draws (Robust-MMR's asymmetric one included), ``flops`` the analytic FLOP count of the passes
``task.plan_passes`` plans. Knows nothing of Ray, DeepSpeed, shards or search."""
