data "fleetform_fleet" "by_name" {
  name = fleetform_fleet.example.name
}

output "fleet_build" {
  value = data.fleetform_fleet.by_name.build_id
}

output "fleet_status" {
  value = data.fleetform_fleet.by_name.status
}
