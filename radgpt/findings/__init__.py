"""What a report says: the CheXpert-style finding labeler, the faithfulness checks built on it, and its
agreement with NegBio gold labels. Used by retrieval, repair, evaluation and the reader study."""
