# A build is imported by its id.
terraform import fleetform_build.example bld-0123456789abcdef
