import factory
from django.contrib.auth.models import Permission
from django.utils import timezone

from accounts.models import User


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User
        skip_postgeneration_save = True

    id = factory.Sequence(lambda n: f"auth0|user{n:06d}")
    email = factory.Sequence(lambda n: f"user{n}@example.com")
    name = factory.Faker("name")
    password = "!"


class AdminFactory(UserFactory):
    id = factory.Sequence(lambda n: f"local|admin{n:06d}")
    email = factory.Sequence(lambda n: f"operator{n}@example.com")
    is_admin = True
    is_superuser = True
    password = factory.PostGenerationMethodCall("set_password", "operator-password")

    @factory.post_generation
    def _save(obj, create, extracted, **kwargs):
        if create:
            obj.save()


class StaffFactory(UserFactory):
    """An operator who may open the console, with exactly the permissions given
    (`permissions=["accounts.view_user", ...]`) and no superuser power."""

    id = factory.Sequence(lambda n: f"local|staff{n:06d}")
    email = factory.Sequence(lambda n: f"staff{n}@example.com")
    is_admin = True

    @factory.post_generation
    def permissions(obj, create, extracted, **kwargs):
        if not create or not extracted:
            return
        for name in extracted:
            app_label, codename = name.split(".")
            # .get(): a misspelt permission fails here, not as a puzzling refusal later
            obj.user_permissions.add(
                Permission.objects.get(content_type__app_label=app_label, codename=codename)
            )


class ClusterFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = "clusters.HopsworksCluster"

    name = factory.Sequence(lambda n: f"cluster-{n}")
    # Port 9 on loopback refuses at once: a cluster nothing should reach unless a test
    # points it at a fake.
    # (a path of its own: each cluster has its own address)
    api_url = factory.Sequence(lambda n: f"https://127.0.0.1:9/c{n}")
    api_key = factory.Sequence(lambda n: f"api-key-{n}")
    max_users = 10
    connection_ok_at = factory.LazyFunction(timezone.now)  # as if tested: takes users
