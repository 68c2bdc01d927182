from __future__ import annotations

from django import forms

from clusters import services
from clusters.hopsworks import (
    normalize_api_url,
    validate_api_key,
    validate_api_url,
    validate_ca_bundle,
)
from clusters.kubeconfig import KubeconfigError, validate_kubeconfig
from clusters.models import HopsworksCluster, max_users_problem

SECRET_NOT_KEPT = (
    "Not kept, because the form has errors: a secret is never shown back. Enter it again."
)


def _secret_state(value) -> str:
    return "set" if value else "not set"


class SecretTextarea(forms.Textarea):
    """A textarea that never renders its value, not even after a failed submit."""

    def get_context(self, name, value, attrs):
        return super().get_context(name, None, attrs)


MODEL_FIELDS = ("name", "api_url", "status", "max_users", "ca_bundle")


class HopsworksClusterForm(forms.ModelForm):
    """Cluster settings. Secrets are write-only: the form never shows them back, only
    whether they are set; leaving an input empty keeps the stored value."""

    api_key_input = forms.CharField(
        label="API key",
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
    )
    kubeconfig_input = forms.CharField(
        label="Kubeconfig",
        required=False,
        widget=SecretTextarea(attrs={"rows": 6, "autocomplete": "off", "spellcheck": "false"}),
    )
    clear_kubeconfig = forms.BooleanField(label="Remove the stored kubeconfig", required=False)

    class Meta:
        model = HopsworksCluster
        fields = MODEL_FIELDS
        # TEXT columns, but one line each: a name and an address.
        widgets = {
            "name": forms.TextInput(attrs={"class": "vTextField"}),
            "api_url": forms.TextInput(attrs={"class": "vURLField", "spellcheck": "false"}),
        }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        creating = self.instance._state.adding
        self.fields["api_key_input"].required = creating
        self.fields["api_key_input"].help_text = (
            "An API key of a Hopsworks admin (scope: admin)."
            if creating
            else f"Currently {_secret_state(self.instance.api_key)}. Leave empty to keep it."
        )
        if creating and "status" in self.fields:
            self.fields["status"].help_text = (
                "A new cluster starts in maintenance (it takes no users) until "
                '"Test the connection to Hopsworks" passes; it then becomes active.'
            )
        self.fields["kubeconfig_input"].help_text = (
            f"Currently {_secret_state(self.instance.kubeconfig)}. "
            "Paste a kubeconfig (YAML with a cluster, a user and a context) to set or replace "
            "it; it is used to read usage from OpenCost. Leave empty to keep it."
        )

    def clean_api_key_input(self):
        key = self.cleaned_data["api_key_input"]
        if key:
            problem = validate_api_key(key)
            if problem:
                raise forms.ValidationError(problem)
        return key

    def clean_api_url(self):
        url = normalize_api_url(self.cleaned_data["api_url"])
        taken = services.cluster_using_url(url, other_than=self.instance.pk)
        if taken is not None:
            raise forms.ValidationError(services.url_taken_message(taken))
        # A new address is resolved and checked; the service checks again, connections too.
        changed = services.cluster_address_changes(self.instance, {"api_url": url})
        problem = validate_api_url(url, resolve=self.instance._state.adding or changed)
        if problem:
            raise forms.ValidationError(problem)
        return url

    def clean_max_users(self):
        # The rule lives on the model; the service checks it again under the row lock.
        max_users = self.cleaned_data["max_users"]
        adding = self.instance._state.adding
        assigned = 0 if adding else self.instance.assignments.count()
        problem = max_users_problem(max_users, assigned=assigned)
        if problem:
            raise forms.ValidationError(problem)
        return max_users

    def clean_kubeconfig_input(self):
        text = self.cleaned_data["kubeconfig_input"]
        if text.strip():
            try:
                validate_kubeconfig(text)
            except KubeconfigError as error:
                raise forms.ValidationError(str(error)) from None
        return text

    def clean_ca_bundle(self):
        pem = (self.cleaned_data.get("ca_bundle") or "").strip()
        if not pem:
            return None
        problem = validate_ca_bundle(pem)
        if problem:
            raise forms.ValidationError(problem)
        return pem + "\n"

    def clean(self):
        data = super().clean()
        instance = self.instance
        if (
            not instance._state.adding
            and data.get("status") == HopsworksCluster.Status.ACTIVE
            and instance.status != HopsworksCluster.Status.ACTIVE
            and instance.connection_ok_at is None
        ):
            self.add_error("status", services.NOT_TESTED)  # the service checks it again
        # The service checks this again under the row lock; here it is a field error.
        address = {f: data[f] for f in ("api_url", "ca_bundle") if f in data}
        if (
            "api_url" in data
            and services.cluster_address_changes(self.instance, address)
            and not data.get("api_key_input")
        ):
            self.add_error("api_key_input", services.KEY_AGAIN)
        return data

    def full_clean(self):
        super().full_clean()
        if not self.is_bound or not self._errors:
            return
        # The page comes back with errors: say the secrets typed in were not kept.
        for name in ("api_key_input", "kubeconfig_input"):
            typed = self.data.get(self.add_prefix(name))
            if isinstance(typed, str) and typed.strip() and name not in self._errors:
                self.add_error(name, SECRET_NOT_KEPT)

    def changes(self) -> dict:
        """The fields to save, secrets included only when the operator gave new ones."""
        data = self.cleaned_data
        changes = {field: data[field] for field in MODEL_FIELDS}
        if data.get("api_key_input"):
            changes["api_key"] = data["api_key_input"]
        if data.get("kubeconfig_input", "").strip():
            changes["kubeconfig"] = data["kubeconfig_input"]
        elif data.get("clear_kubeconfig"):
            changes["kubeconfig"] = None
        return changes


class ClusterChoiceForm(forms.Form):
    cluster = forms.ModelChoiceField(
        queryset=HopsworksCluster.objects.filter(status=HopsworksCluster.Status.ACTIVE),
        help_text="Active clusters only; a full cluster refuses the user.",
    )
