from django.contrib import admin
from django.urls import include, path

from accounts.urls import social_urlpatterns
from billing import views as billing_views
from billing.webhooks import stripe_webhook
from platform_site import views

admin.site.site_header = "Hopsworks Platform Console"
admin.site.site_title = "Platform Console"
admin.site.index_title = "Operations"

urlpatterns = [
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    path("admin/", admin.site.urls),
    path("webhooks/stripe/", stripe_webhook, name="stripe-webhook"),
    path("auth/", include(social_urlpatterns, namespace="social")),
    path("", billing_views.account_page, name="home"),
    path("", include("billing.urls")),
    path("", include("accounts.urls")),
]
