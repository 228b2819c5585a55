"""Models: the ultralytics detector wrapper (:mod:`.yolo`), self-describing run folders
(:mod:`.runs`), the timm crop classifier, crop extraction and class balance."""
