from accounts import services


def count_login(sender, request, user, **kwargs):
    """Runs once per real login (Auth0 or password), never on page loads."""
    services.user_record_login(user=user)
