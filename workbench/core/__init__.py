"""Core: what every layer needs and nothing domain-specific.

Paths, atomic writes, the offline set-up, device choice, the problems table, image reading
and normalisation, and the box-table schema. Imports nothing else from workbench.
"""
