import factory

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
