"""Making shard sets, offline: SynthRad generated (``synthrad``, ``sets.make_synthrad_shards``),
public datasets converted (``converters``, ``sets.make_converted_shards``), written as WebDataset
shards with their manifest and tokenizer (``writer``), shards another tool wrote indexed where they
are (``foreign``), a set checked member by member (``validate``), and the set a job trains on,
made when needed (``sets.resolve_data``). The training-time stream (``raymmr.data``: shards,
loader, tario, images, schema, answers, tokenizer) never imports this package."""
