"""The paper's comparison, reproduced: the runner (:mod:`.runner`: ``reproduce``, ``ablate``), its tables
(:mod:`.tables`) and a reproduce folder assembled from runs trained elsewhere (:mod:`.assemble`)."""
