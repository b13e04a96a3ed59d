"""Image mirroring to the registries sites pull from (the predecessor's `destinations:`): which builds
go where (`plan`), the state of the jobs that copy them (in the store), and the runs that copy them
(`run`) over cccatalog's own registry client and image copy."""
