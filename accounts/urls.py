from django.urls import path
from social_django import views as social_views

from accounts import views

urlpatterns = [
    path("login/", views.login_page, name="login"),
    path("logout/", views.logout_view, name="logout"),
]

# social-auth reverses these names (namespace "social") to build its redirect URI.
social_urlpatterns = (
    [
        path("login/<str:backend>/", social_views.auth, name="begin"),
        path("complete/<str:backend>/", views.auth0_complete, name="complete"),
    ],
    "social",
)
