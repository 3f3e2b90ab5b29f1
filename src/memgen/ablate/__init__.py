"""Stage `ablate`: knock out (or scale) each attention and MLP layer: where is it decided?"""
