"""Result files (:mod:`.markdown`: markdown, CSV, JSON) and figures (:mod:`.plots`)."""
