"""Analysis: cell statistics over box tables (counts, ratios, sizes, density, flags) and
micronuclei per cell / MN frequency."""
