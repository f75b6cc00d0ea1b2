output "fleet_id" {
  description = "The title's fleet: placements go to `POST /v1/fleets/<fleet_id>/sessions`."
  value       = fleetform_fleet.this.id
}

output "zone_names" {
  description = "The zones' names by key, the `zone` of a placement request."
  value       = { for key, zone in fleetform_zone.this : key => zone.name }
}

output "zone_ids" {
  description = "The zones' ids by key (for `fleetform_zone_status`)."
  value       = { for key, zone in fleetform_zone.this : key => zone.id }
}

output "placement_url" {
  description = "Where the matchmaker places a session: POST `{\"zone\": \"<zone name>\"}` with the fleetformd token."
  value       = "${trimsuffix(var.endpoint, "/")}/v1/fleets/${fleetform_fleet.this.id}/sessions"
}
