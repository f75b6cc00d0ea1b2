# A whole title in one apply: the `title` module stands up the build, the fleet and a zone
# per region (here the server's `local` machines and its `sim` simulated cloud), and says
# where the matchmaker places sessions.
#
#   export FLEETFORM_ENDPOINT=http://127.0.0.1:7400   # where fleetformd listens
#   export FLEETFORM_TOKEN=...                          # the token fleetformd printed
#   terraform init && terraform apply -var build_dir=/abs/path/to/dir/with/example-game-server

terraform {
  required_version = ">= 1.3"

  required_providers {
    fleetform = {
      source = "fleetform/fleetform"
    }
  }
}

# endpoint and token come from FLEETFORM_ENDPOINT and FLEETFORM_TOKEN.
provider "fleetform" {}

variable "build_dir" {
  description = "Absolute path of a directory holding the example-game-server binary."
  type        = string

  validation {
    condition     = startswith(var.build_dir, "/")
    error_message = "build_dir must be an absolute path."
  }
}

variable "endpoint" {
  description = "fleetformd's URL as the matchmaker reaches it (for the placement URL)."
  type        = string
  default     = "http://127.0.0.1:7400"
}

module "arena" {
  source = "../../modules/title"

  name              = "arena"
  build_source      = "file://${var.build_dir}"
  build_version     = "stack"
  launch_path       = "example-game-server"
  launch_parameters = "--port {port}"
  scaling           = "steady"
  endpoint          = var.endpoint

  # A demo: let `terraform destroy` end sessions still running.
  force_destroy = true

  zones = {
    local = {
      data_centers = {
        "local-1" = { location = "local", max_server_processes = 4, processes_per_machine = 2 }
      }
    }
    sim = {
      initial_server_processes = 2
      data_centers = {
        "sim-a" = { location = "sim", max_server_processes = 8, processes_per_machine = 4 }
        "sim-b" = { location = "sim", max_server_processes = 8, processes_per_machine = 4, priority = 1 }
      }
    }
  }
}

output "fleet_id" {
  value = module.arena.fleet_id
}

output "zone_names" {
  value = module.arena.zone_names
}

output "placement_url" {
  value = module.arena.placement_url
}
