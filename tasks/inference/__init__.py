"""Running registered models on images: one file (`enhance`), and the bulk apply path built on it."""
