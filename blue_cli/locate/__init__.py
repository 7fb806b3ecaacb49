"""The "locate" of locate-then-edit: causal tracing (ROME, Meng et al. 2022) of facts a model knows.

``tracing`` holds the per-fact math (torch only), ``summary`` the averages over ROME's six
token groups and the suggested critical layers, ``facts`` where the facts come from, and
``run`` the folder of ``blue locate`` (settings, per-fact trace files, ``locate.json``).
"""
