resource "fleetform_fleet" "example" {
  name              = "arena"
  description       = "Ranked 5v5 arena"
  build_id          = fleetform_build.example.id
  update_mode       = "soft"
  launch_path       = "bin/arena-server"
  launch_parameters = "--port {port} --process {process_id} --sdk {sdk_addr}"

  process_restart_hours = 24
  session_mode          = "parallel"
  sessions_per_process  = 4
  storage_gb            = 50
  force_destroy         = false
}
