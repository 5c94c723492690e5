"""disse.pipeline: offline synthesis of spatial audio-text shards (`disse-synth`)."""
