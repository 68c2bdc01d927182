from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from accounts.urls import social_urlpatterns
from billing import api as billing_api
from billing.webhooks import auth0_log_stream, stripe_webhook
from clusters import api as clusters_api
from console import api as console_api
from platform_site import views

api_v1 = [
    path("me", console_api.MyProfileView.as_view(), name="me"),
    path("me/usage", console_api.MyUsageView.as_view(), name="me-usage"),
    path("me/billing", console_api.MyBillingView.as_view(), name="me-billing"),
    path("users", clusters_api.UserList.as_view(), name="users"),
    path("users/<str:user_id>", clusters_api.UserDetail.as_view(), name="user"),
    path(
        "users/<str:user_id>/assignment",
        clusters_api.AssignmentView.as_view(),
        name="user-assignment",
    ),
    path("clusters", clusters_api.ClusterList.as_view(), name="clusters"),
    path("usage", billing_api.UsageRecordsView.as_view(), name="usage"),
]

handler400 = views.bad_request
handler404 = views.page_not_found
handler403 = views.permission_denied

urlpatterns = [
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    path("admin/", admin.site.urls),
    path("webhooks/stripe/", stripe_webhook, name="stripe-webhook"),
    path("webhooks/auth0/", auth0_log_stream, name="auth0-log-stream"),
    path("api/v1/", include((api_v1, "api"))),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("auth/", include(social_urlpatterns, namespace="social")),
    path("", include("console.urls")),
    path("", include("accounts.urls")),
]
