"""TTS engines: each one yields 16-bit mono PCM at its own sample rate (see `base.Engine`)."""
