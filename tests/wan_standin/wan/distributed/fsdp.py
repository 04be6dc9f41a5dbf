def shard_model(model, device_id, **kwargs):
    # Stand-in: the real one wraps the model in FSDP.
    raise NotImplementedError("the wan stand-in does not implement FSDP")
