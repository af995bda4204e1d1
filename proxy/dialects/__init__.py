"""Client dialects other than Chat Completions, translated into and out of it.

The gateway's internal model is the Chat Completions request body, completion and chunk
stream that the chat path already routes, limits, caches and records. A dialect module
converts its client wire format into that model (`request`), and the model's answer back
into its wire format (`response` for a whole answer, `stream` for SSE event by event).
Every transform here is pure: no I/O, testable on literal wire data. Passthrough (Messages
to an Anthropic provider, Responses to a Responses provider) does not go through here.
"""
