"""ff-index: scan an image pool, extract features in parallel, write a bundle."""
