"""Resource options that a component hands down to the resources it creates."""

import pulumi


def child_options(
    parent: pulumi.Resource, opts: pulumi.ResourceOptions | None, **extra
) -> pulumi.ResourceOptions:
    """Parented to the component, and waiting for what the component was told to wait for.

    Pulumi does not pass a component's `depends_on` down to its children, so without this
    a child (say, a service account) would not wait for the APIs it calls.
    """
    return pulumi.ResourceOptions(
        parent=parent, depends_on=opts.depends_on if opts else None, **extra
    )
