"""The stages, in the order they run; the curves (curve_*) last."""
