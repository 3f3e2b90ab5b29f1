"""Stage `specificity`: fitted steering on top-N% neuron sets beside matched random sets."""
