"""Stage `bound`: the best shared shift per layer, fitted and held out (how far could any
steering go?)."""
