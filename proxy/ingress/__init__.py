"""Ingress codecs for client protocols other than chat completions (Anthropic Messages, Responses).

Each one validates its protocol's body into an OpenAI chat body for `call.body` (the validate stage, after
auth) and renders the pipeline's OpenAI-shaped reply back into its protocol. A target that speaks the
client's protocol gets `call.raw_body` with only `model` replaced (`model_swap.py`), and its reply comes
back marked `Reply.native`: it is relayed as is.
"""
