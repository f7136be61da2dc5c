"""Reader study: blinded, randomised, multi-reader rating of generated impressions, and its statistics."""
