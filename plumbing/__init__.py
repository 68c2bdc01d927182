"""Shared plumbing that belongs to no domain: database functions, the encrypted field, the
admin confirmation step, the API's parser/throttle/pagination/error format, outbound-URL
checks and `actor_label`. It imports none of our apps: every app may import it."""
