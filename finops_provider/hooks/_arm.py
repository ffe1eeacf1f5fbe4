"""Resource Manager reads (GET and paged lists) for hooks built on ``AzureCostManagementHook``.

They go through the Cost Management client's pipeline (same credential, bearer-token policy, endpoint and
retry policy), so no second Azure client exists; ``nextLink`` must stay on the Resource Manager host.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any


class ArmReadMixin:
    """Mixed into subclasses of :class:`~finops_provider.hooks.azure_cost_management.AzureCostManagementHook`."""

    if TYPE_CHECKING:  # provided by AzureCostManagementHook (declared here for type checking only)
        client: Any
        resource_manager_url: str

        def _call(self, fn: Any, what: str) -> Any: ...

        def _check_next_link(self, next_link: str) -> None: ...

    def arm_get(self, path: str, api_version: str) -> dict[str, Any]:
        """``GET {resource manager}/{path}?api-version=...``."""
        return self._arm_get_url(f"{self.resource_manager_url.rstrip('/')}/{path.strip('/')}?api-version={api_version}")

    def _arm_get_url(self, url: str) -> dict[str, Any]:
        from azure.core.exceptions import HttpResponseError
        from azure.core.rest import HttpRequest

        def once() -> dict[str, Any]:
            response = self.client.send_request(HttpRequest("GET", url))
            if response.status_code != 200:
                raise HttpResponseError(response=response)
            return response.json()  # type: ignore[no-any-return]

        return self._call(once, f"GET {url.split('?', 1)[0].rsplit('/', 1)[-1]}")  # type: ignore[no-any-return]

    def arm_list(self, path: str, api_version: str) -> list[dict[str, Any]]:
        """A Resource Manager list: ``value`` of every page, following ``nextLink``."""
        page = self.arm_get(path, api_version)
        items = list(page.get("value") or [])
        while page.get("nextLink"):
            link = str(page["nextLink"])
            self._check_next_link(link)
            page = self._arm_get_url(link)
            items.extend(page.get("value") or [])
        return items
