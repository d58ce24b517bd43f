"""The running server: the app factory, its state, its middlewares and what they need."""
