"""Weight-space tasks built on neural graphs (e.g. generalization prediction on CNN zoos)."""
