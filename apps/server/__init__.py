"""The local chat app's server: an OpenAI-compatible API over one LoadedModel (apps.server.app.create_app)."""
