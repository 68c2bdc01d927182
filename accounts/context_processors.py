from accounts import auth0


def auth0_login(request):
    return {"auth0_configured": auth0.is_configured()}
