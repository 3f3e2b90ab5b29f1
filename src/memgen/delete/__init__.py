"""Stage `delete`: delete the neurons each scorer selects on the flipped pairs: is memory lost?"""
