"""`radgpt impress`: findings → impressions, with the engines (backends/) that generate them."""
