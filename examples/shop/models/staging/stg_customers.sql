with source as (

    select * from {{ source('raw', 'customers') }}

),

renamed as (

    select
        customer_id,
        lower(trim(email)) as email,
        first_name,
        last_name,
        first_name || ' ' || last_name as full_name,
        upper(country_code) as country_code,
        signed_up_at,
        _loaded_at

    from source

)

select * from renamed
