"""DefaultQuantization's algorithms, one module each, behind one contract (:mod:`.base`), run in POT's order by
the driver (:mod:`.pipeline`): ``min_max`` (MinMaxQuantization), ``overflow_correction`` (GNA), and in
``pending`` the steps later releases add (channel alignment, fast bias / bias correction, layerwise tuning)."""
