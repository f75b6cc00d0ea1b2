data "fleetform_zone_status" "example" {
  zone_id = fleetform_zone.example.id
}

output "idle_servers" {
  value = data.fleetform_zone_status.example.processes_idle
}

output "active_machines" {
  value = lookup(data.fleetform_zone_status.example.machines, "ACTIVE", 0)
}
