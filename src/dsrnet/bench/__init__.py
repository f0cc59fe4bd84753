"""``dsrnet bench``: parameters, MACs, latency, throughput and peak memory (:mod:`.measure`)."""
