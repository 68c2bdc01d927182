from django.dispatch import Signal

# Sent inside the transaction that changes a user's status, with user=, previous=, status=
# and actor=. Apps that keep state elsewhere for the user (their Hopsworks account) listen
# here, since accounts imports nothing from them.
user_status_changed = Signal()
