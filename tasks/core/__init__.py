"""The foundation every stage shares: errors, settings, storage URLs, image decoding, the catalog, the
workspace layout, shards and the model registry. No torch here (the registry imports it only to load)."""
