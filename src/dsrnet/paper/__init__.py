"""The paper's comparison, reproduced: the runner (:mod:`.runner`: ``reproduce``, ``ablate``) and its tables
(:mod:`.tables`)."""
