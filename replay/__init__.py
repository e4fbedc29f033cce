"""A recorded flight replayed through skyfix and scored against its own GPS (`skyfix replay`)."""
