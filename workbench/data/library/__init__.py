"""Training libraries: style levels derived from audit measurements, composition of a library
by level and ratio, and the library folder built from batches (:mod:`.builder`)."""
