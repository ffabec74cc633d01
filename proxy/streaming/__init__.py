"""Stream plumbing shared by every adapter: SSE decoding, OpenAI chunk encoding, the relay loop."""
