data "fleetform_locations" "available" {}

output "location_names" {
  value = data.fleetform_locations.available.names
}

# The locations where a data center can run bare metal.
output "bare_metal_locations" {
  value = [
    for location in data.fleetform_locations.available.locations : location.name
    if contains(location.machine_types, "bare_metal")
  ]
}
